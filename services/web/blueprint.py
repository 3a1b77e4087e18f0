"""The blueprint every resource uses: flask-smorest's, with JSON arguments read once (orjson)."""

from __future__ import annotations

import flask_smorest

from services.web.bodies import JsonParser

#: Status of a request whose body or query fails validation (webargs' default is 422).
VALIDATION_STATUS = 400
#: OpenAPI description of the Location header of a created resource.
LOCATION = {"description": "URL of the new resource", "schema": {"type": "string"}}


class Blueprint(flask_smorest.Blueprint):
    """A flask-smorest Blueprint whose `arguments` read a JSON body through `bodies.json_object`."""

    ARGUMENTS_PARSER = JsonParser()
