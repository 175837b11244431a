"""The lifecycle fixtures (the use cases, end to end): the fake Sage over HTTP and a real warehouse."""

from tests.lifecycle_kit import lenv, sage  # noqa: F401 - pytest finds fixtures by their name here
