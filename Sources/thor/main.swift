import ThorCLI

ThorCommand.main()
