from unixify.cli import main

raise SystemExit(main())
