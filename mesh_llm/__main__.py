from mesh_llm.cli import main

raise SystemExit(main())
