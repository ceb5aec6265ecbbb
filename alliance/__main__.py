from alliance.cli import app

if __name__ == "__main__":  # a process started by spawn imports this module again: it must not run the CLI
    app()
