"""``dreamdist studio``: a local web page to train, explore and compare runs.

A thin front end over the package's functions: training runs ``dreamdist.training.loop.train`` in a
child process (``worker``), exploring calls ``dreamdist.generation.generate``, comparing calls the
toy-world oracle report or reads ``dreamdist eval`` reports. The server (``server``) is the Python
standard library's ``http.server``; the page is plain HTML and JavaScript (``static/``).
"""
