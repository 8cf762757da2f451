"""How many emails run where. The local engine is `Pipeline.arun_many`; `ray_engine` runs the same Pipeline in a
Ray Data actor pool. Engines sit on top of the pipeline: the pipeline never imports them."""
