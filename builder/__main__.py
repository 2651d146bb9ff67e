from builder.cli.entry import main

main()
