from asgi_identity.cli import main

raise SystemExit(main())
