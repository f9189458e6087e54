"""The OCI slice: everything only ``/v2`` needs. Its HTTP face (``http``), an upload
session's life (``sessions``), a push's keeping (``keep``), its tables' queries
(``store``), and the OCI view of stored disks: generated containerDisks
(``containerdisk``), their digests (``digests``), pushed manifests (``push``), media
types."""
