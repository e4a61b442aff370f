from taskvault import AsyncClient  # noqa: F401
