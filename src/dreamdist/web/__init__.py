"""The web servers' shared layer: the request guard (:mod:`dreamdist.web.guard`) and serving on
uvicorn (:mod:`dreamdist.web.serve`)."""
