{{/* Chart name, truncated to the 63 characters a label value may hold. */}}
{{- define "cloudimg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release and chart name, unless one contains the other. */}}
{{- define "cloudimg.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cloudimg.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "cloudimg.labels" -}}
helm.sh/chart: {{ include "cloudimg.chart" . }}
{{ include "cloudimg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cloudimg
{{- end }}

{{/* Selector labels of the server pods. */}}
{{- define "cloudimg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cloudimg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cloudimg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cloudimg.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cloudimg.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}

{{- define "cloudimg.claimName" -}}
{{- default (include "cloudimg.fullname" .) .Values.volume.existingClaim }}
{{- end }}

{{/* "true" when the catalog is PostgreSQL (a URL from a Secret), "" for SQLite on the volume. */}}
{{- define "cloudimg.postgres" -}}
{{- if .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{/* "true" when the volume can be mounted read-write on one node only. */}}
{{- define "cloudimg.singleNodeVolume" -}}
{{- if ne .Values.volume.accessMode "ReadWriteMany" }}true{{ end }}
{{- end }}

{{/*
Refuse the values that cannot work. Included by every workload template, so
`helm template` and `helm install` stop with the reason.
*/}}
{{- define "cloudimg.validate" -}}
{{- if gt (int .Values.replicaCount) 1 }}
{{- if not (include "cloudimg.postgres" .) }}
{{- fail "replicaCount > 1 needs PostgreSQL (database.existingSecret): the SQLite catalog lives on one volume and serves one pod" }}
{{- end }}
{{- if ne .Values.volume.accessMode "ReadWriteMany" }}
{{- fail "replicaCount > 1 needs volume.accessMode ReadWriteMany: every replica mounts the blob store" }}
{{- end }}
{{- end }}
{{- if eq .Values.volume.accessMode "ReadWriteOncePod" }}
{{- if .Values.gc.enabled }}
{{- fail "volume.accessMode ReadWriteOncePod leaves the gc CronJob no way to mount the volume: use ReadWriteOnce, or set gc.enabled false" }}
{{- end }}
{{- end }}
{{- $mount := trimSuffix "/" .Values.volume.mountPath }}
{{- if not (or (eq .Values.configurations.dataRoot $mount) (hasPrefix (printf "%s/" $mount) .Values.configurations.dataRoot)) }}
{{- fail (printf "configurations.dataRoot (%s) must be volume.mountPath (%s) or a directory inside it" .Values.configurations.dataRoot $mount) }}
{{- end }}
{{- if eq .Values.auth.readAuth "basic" }}
{{- if or (not .Values.auth.readCredentials.existingSecret) (not .Values.auth.writeTokens.existingSecret) }}
{{- fail "auth.readAuth basic needs auth.readCredentials.existingSecret and auth.writeTokens.existingSecret" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment of every cloudimg container: where the data and the catalog are. */}}
{{- define "cloudimg.storageEnv" -}}
- name: CLOUDIMG_DATA_ROOT
  value: {{ .Values.configurations.dataRoot | quote }}
{{- if include "cloudimg.postgres" . }}
- name: CLOUDIMG_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by the server, the gc and migration pods. */}}
{{- define "cloudimg.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
