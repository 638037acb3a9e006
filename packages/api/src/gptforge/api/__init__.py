"""gptforge.api: the v1 gRPC contracts (generated code) and the shared server plumbing.

- ``gptforge.api.tokenizer.v1.tokenizer_pb2[_grpc]``: TokenizerService.
- ``gptforge.api.generation.v1.generation_pb2[_grpc]``: GenerationService.
- :mod:`gptforge.api.server`: grpc.aio server setup shared by both services.
- :mod:`gptforge.api.channel`: client channels and auth metadata.

Regenerate the protobuf code with ``make proto`` (``tools/gen_proto.py``); never edit it by hand.
"""
