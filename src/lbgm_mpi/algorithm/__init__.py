"""The learning algorithms as pure tensor code: no MPI in here."""
