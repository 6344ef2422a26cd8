from nbo.cli import main

main()
