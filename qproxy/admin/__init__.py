"""Commands for the admins who run qproxy: ``qproxy audit``, ``qproxy secrets``,
``qproxy doctor``."""
