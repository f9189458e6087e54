"""The ``/reg`` face: the registry API's handlers, over the catalog's reads and the registry core.

- :mod:`cloudimg.api.reg.controllers`: listings, downloads, ``/meta``, the uploads' and
  the delete's routes;
- :mod:`cloudimg.api.reg.uploads`: the two upload body forms (multipart ``POST``, raw
  ``PUT``) that turn a request into what the core's upload takes, and a write's 201;
- :mod:`cloudimg.api.reg.history`: a tag's history, retag (rollback, a push's commit)
  and immutability.

What both faces share over HTTP (errors, auth, body reading, downloads, metrics) stays
in :mod:`cloudimg.api`. Nothing is imported here, so :mod:`cloudimg.api.openapi` can
name the upload's query parameters without importing the handlers.
"""
