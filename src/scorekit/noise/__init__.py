"""The sigma question: choosing noise levels from the data (NCSNv2's techniques) and
measuring the DSM loss per noise level against its irreducible floor."""
