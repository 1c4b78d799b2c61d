"""The dashboard's files (index.html, static/): data, served by app.api.routes.ui; no Python code lives here."""
