from effedge.cli import main

main()
