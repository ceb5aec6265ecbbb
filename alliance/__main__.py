from alliance.cli import app

app()
