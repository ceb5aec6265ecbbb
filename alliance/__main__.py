from alliance.cli import app

if __name__ == "__main__":  # imported, it runs nothing
    app()
