"""What the device agent (edge_agent) and the fleet side (edgectl) must agree on: topics and
message shapes, the twin protocol, document envelopes, name rules, batch encoding, signature and
registry formats. Imports nothing from either side."""
