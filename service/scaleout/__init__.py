"""Scale-out on Ray Serve: one ingress deployment with the single-process HTTP API, and a
model deployment whose replicas each run the ordinary engine (scheduler, patcher, plan
cache). Requests reach the model through Serve's model multiplexing with the *pair*
(``hau|ner``) as the model id, so a pair's traffic sticks to replicas that have its patch
plan cached. Nothing here is imported by the single-process server; ``ray[serve]`` is the
``ray`` extra."""
