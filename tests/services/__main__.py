import sys

from tests.services.servers import main

sys.exit(main(sys.argv[1:]))
