from taskvault import Client  # noqa: F401
