"""A multi-node job's relay: ``auth`` (cluster key, relay header, the primary's relay listener
socket; stdlib), ``listen`` (the primary's second listener: the same app with relay
authentication), ``process`` (``qproxy serve --relay-to``: the relay proxy on every other
node)."""
