"""Operator's console: overview of every line and camera, line views, alert review.

``main`` (the process), ``settings``, ``access`` (hosts, login, session, CSRF),
``console`` (the queries over Redis), ``server`` (Starlette routes, uvicorn) and
``static/`` (the page, its script and style sheet, the login page).
"""
