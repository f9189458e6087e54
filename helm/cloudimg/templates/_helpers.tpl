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

{{/* "true" when blobs are kept in a bucket (blobStore.type s3), "" on the data volume. */}}
{{- define "cloudimg.s3" -}}
{{- if eq (.Values.blobStore).type "s3" }}true{{ end }}
{{- end }}

{{/*
"true" when the pods need the data volume (a PersistentVolumeClaim): it holds the blobs
(filesystem store) or the SQLite catalog. With blobs in a bucket and the catalog in
PostgreSQL nothing lasting is kept on a pod's disk, so there is no claim at all.
*/}}
{{- define "cloudimg.persistentVolume" -}}
{{- if not (and (include "cloudimg.s3" .) (include "cloudimg.postgres" .)) }}true{{ end }}
{{- end }}

{{/* "true" when the volume can be mounted read-write on one node only. */}}
{{- define "cloudimg.singleNodeVolume" -}}
{{- if and (include "cloudimg.persistentVolume" .) (ne .Values.volume.accessMode "ReadWriteMany") }}true{{ end }}
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
{{- if and (not (include "cloudimg.s3" .)) (ne .Values.volume.accessMode "ReadWriteMany") }}
{{- fail "replicaCount > 1 needs volume.accessMode ReadWriteMany: every replica mounts the blob store (or blobs in a bucket: blobStore.type s3)" }}
{{- end }}
{{- end }}
{{- if include "cloudimg.persistentVolume" . }}
{{- if eq .Values.volume.accessMode "ReadWriteOncePod" }}
{{- if .Values.gc.enabled }}
{{- fail "volume.accessMode ReadWriteOncePod leaves the gc CronJob no way to mount the volume: use ReadWriteOnce, or set gc.enabled false" }}
{{- end }}
{{- end }}
{{- $mount := trimSuffix "/" .Values.volume.mountPath }}
{{- if not (or (eq .Values.configurations.dataRoot $mount) (hasPrefix (printf "%s/" $mount) .Values.configurations.dataRoot)) }}
{{- fail (printf "configurations.dataRoot (%s) must be volume.mountPath (%s) or a directory inside it" .Values.configurations.dataRoot $mount) }}
{{- end }}
{{- end }}
{{- if include "cloudimg.s3" . }}
{{- $s3 := .Values.blobStore.s3 }}
{{- if not (or $s3.bucket $s3.bucketFromConfigMap) }}
{{- fail "blobStore.type s3 needs blobStore.s3.bucket or blobStore.s3.bucketFromConfigMap (an ObjectBucketClaim's ConfigMap)" }}
{{- end }}
{{- if and $s3.existingSecret $s3.credentialsSecret }}
{{- fail "blobStore.s3: give existingSecret (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or credentialsSecret (a credentials file), not both" }}
{{- end }}
{{- else if (.Values.blobStore).s3 }}
{{- if (.Values.blobStore.s3).redirectDownloads }}
{{- fail "blobStore.s3.redirectDownloads needs blobStore.type s3: a redirect names an object of the bucket" }}
{{- end }}
{{- end }}
{{- if eq .Values.auth.readAuth "basic" }}
{{- if or (not .Values.auth.readCredentials.existingSecret) (not .Values.auth.writeTokens.existingSecret) }}
{{- fail "auth.readAuth basic needs auth.readCredentials.existingSecret and auth.writeTokens.existingSecret" }}
{{- end }}
{{- end }}
{{- if and (.Values.auth.policy).existingSecret (not .Values.auth.writeTokens.existingSecret) }}
{{- fail "auth.policy needs auth.writeTokens.existingSecret: writes would be open" }}
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

{{/*
Environment of the containers that open the blob store (the server, gc): where the
blobs are when they are in a bucket, and the credentials boto3 reads. Nothing for the
filesystem store (the data root is the store). The migrations never open it, so they
never get the object store's credentials.
*/}}
{{- define "cloudimg.blobStoreEnv" -}}
{{- if include "cloudimg.s3" . }}
{{- $s3 := .Values.blobStore.s3 }}
{{- $prefix := trimAll "/" ($s3.prefix | default "") }}
{{- if $s3.bucketFromConfigMap }}
{{- /* An ObjectBucketClaim's ConfigMap: the bucket's generated name and the address
of the store, read when the pod starts; $(VAR) below expands them (Kubernetes expands
a variable defined earlier in the list). */}}
- name: BUCKET_NAME
  valueFrom:
    configMapKeyRef:
      name: {{ $s3.bucketFromConfigMap }}
      key: BUCKET_NAME
{{- if not $s3.endpoint }}
- name: BUCKET_HOST
  valueFrom:
    configMapKeyRef:
      name: {{ $s3.bucketFromConfigMap }}
      key: BUCKET_HOST
- name: BUCKET_PORT
  valueFrom:
    configMapKeyRef:
      name: {{ $s3.bucketFromConfigMap }}
      key: BUCKET_PORT
{{- end }}
{{- end }}
- name: CLOUDIMG_BLOB_STORE
  value: {{ printf "s3://%s%s" (ternary "$(BUCKET_NAME)" ($s3.bucket | default "") (not $s3.bucket)) (ternary "" (printf "/%s" $prefix) (not $prefix)) | quote }}
{{- if $s3.endpoint }}
- name: CLOUDIMG_S3_ENDPOINT
  value: {{ $s3.endpoint | quote }}
{{- else if $s3.bucketFromConfigMap }}
- name: CLOUDIMG_S3_ENDPOINT
  value: {{ printf "%s://$(BUCKET_HOST):$(BUCKET_PORT)" $s3.endpointScheme | quote }}
{{- end }}
{{- with $s3.region }}
- name: CLOUDIMG_S3_REGION
  value: {{ . | quote }}
{{- end }}
- name: CLOUDIMG_S3_PATH_STYLE
  value: {{ $s3.pathStyle | quote }}
{{- if $s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: {{ $s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: {{ $s3.secretAccessKeyKey }}
{{- end }}
{{- if $s3.credentialsSecret }}
- name: AWS_SHARED_CREDENTIALS_FILE
  value: /etc/cloudimg/s3/{{ $s3.credentialsKey }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volume mounts of the data root and of the object store's credentials file. */}}
{{- define "cloudimg.dataMounts" -}}
- name: data
  {{- if include "cloudimg.persistentVolume" . }}
  mountPath: {{ .Values.volume.mountPath }}
  {{- else }}
  {{- /* No claim: the emptyDir is the data root itself, so it exists for every command. */}}
  mountPath: {{ .Values.configurations.dataRoot }}
  {{- end }}
- name: tmp
  mountPath: /tmp
{{- if and (include "cloudimg.s3" .) .Values.blobStore.s3.credentialsSecret }}
- name: s3-credentials
  mountPath: /etc/cloudimg/s3
  readOnly: true
{{- end }}
{{- end }}

{{/*
The volumes behind cloudimg.dataMounts. Without a claim (blobs in a bucket, catalog in
PostgreSQL) the data root is an emptyDir: serve creates its directories there and the
other commands check that it exists, but nothing in it outlives the pod.
*/}}
{{- define "cloudimg.dataVolumes" -}}
- name: data
  {{- if include "cloudimg.persistentVolume" . }}
  persistentVolumeClaim:
    claimName: {{ include "cloudimg.claimName" . }}
  {{- else }}
  emptyDir:
    sizeLimit: 64Mi
  {{- end }}
{{- if and (include "cloudimg.s3" .) .Values.blobStore.s3.credentialsSecret }}
- name: s3-credentials
  secret:
    secretName: {{ .Values.blobStore.s3.credentialsSecret }}
    defaultMode: 0440
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
