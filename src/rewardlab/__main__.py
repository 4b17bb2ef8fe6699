"""``python -m rewardlab …`` runs the command-line interface (as ``rewardlab …`` does)."""

from rewardlab.cli.main import main


raise SystemExit(main())
