from detkd.cli import main

raise SystemExit(main())
