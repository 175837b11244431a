"""The lifecycle fixtures (the notices a DAG's callbacks send): the fake Sage over HTTP and a real warehouse."""

from tests.lifecycle_kit import lenv, sage  # noqa: F401 - pytest finds fixtures by their name here
