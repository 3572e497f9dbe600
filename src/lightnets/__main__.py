import os
import sys

from lightnets.cli import main

if "TORCHELASTIC_RUN_ID" in os.environ:
    # Under torchrun: an uncaught error is written where the launcher reads it, so its summary names the
    # failing rank and shows that rank's traceback.
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)

sys.exit(main())
