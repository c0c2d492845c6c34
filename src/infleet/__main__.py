from infleet.cli import main

raise SystemExit(main())
