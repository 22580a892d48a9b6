"""python -m wgcast"""

from wgcast.cli.main import main

main()
