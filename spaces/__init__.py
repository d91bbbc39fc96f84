"""Search spaces: pure data. Each study module here defines ``SPACE`` (name -> dimension);
names equal the fields of the study's config dataclass."""
