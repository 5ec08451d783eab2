"""The ``zq`` command: joins the producer and worker commands, and the demo."""
