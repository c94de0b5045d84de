from tickwire.engine.cli import main

raise SystemExit(main())
