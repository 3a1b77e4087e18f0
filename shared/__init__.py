"""The pure core and what every process of mnist-service shares."""

#: Version of mnist-service (the OpenAPI document and the V2 server metadata report it).
__version__ = "0.1.0"
