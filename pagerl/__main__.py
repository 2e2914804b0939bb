from pagerl.cli import main

main()
