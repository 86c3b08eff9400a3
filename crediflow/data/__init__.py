"""Data contracts: the record schema and column names, readers, formats, the Great
Expectations contract, plain tables, texts of records and the append-only caches."""
