from simulators.tsl.cli import main

raise SystemExit(main())
