from ltstg.cli import main

main()
