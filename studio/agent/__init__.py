"""The ChatDiT-style agent: parse a request, plan its steps, run them through the studio's methods."""
