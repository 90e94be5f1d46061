"""The pages the service and ``promptlabel review`` serve: static HTML, CSS and JavaScript that
talk to the JSON API only, with their libraries vendored (``vendor/``, each with its licence), so
they work offline and need no build step."""
