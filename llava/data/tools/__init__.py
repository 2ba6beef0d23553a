"""Offline data tools, apart from the runtime dataset: the validator, the instruction-data generator,
the synthetic demo data and the demo tower's pre-training. Runtime modules never import them."""
