"""The peers of benchmarks/peers.py: for each block kind, the plain layer a competent user
would write (one module per kind family: attention, mlp, rnn, ssm, rat), the copying of
archlab's weights into it, the registry of kinds (kinds.py), archlab's side of each row
(archlab_side.py) and what they share (common.py, run_setup.py). Nothing here imports
peers.py or the timing beside it."""
