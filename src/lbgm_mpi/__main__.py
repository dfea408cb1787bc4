from lbgm_mpi.cli import main

raise SystemExit(main())
