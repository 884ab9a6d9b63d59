"""One module per benchmark row: ROW, TITLE and run(workspace, profile) -> RowResult."""
