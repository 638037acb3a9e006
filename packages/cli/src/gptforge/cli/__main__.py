from gptforge.cli.main import main

main()
