from safetybed.cli import main

main()
