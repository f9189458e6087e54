"""The OCI slice's HTTP face under ``/v2``: handlers that translate requests into calls of
the slice (``cloudimg.oci.sessions``, ``cloudimg.oci.keep``, ``cloudimg.oci.store``) and
their results into the OCI Distribution spec's answers; :func:`routes.oci_routes` gives
``cloudimg.api.app`` what to mount."""
