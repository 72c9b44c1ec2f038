"""The web kit shared by both services (the prediction API in `api/` and the embedder service in
`embedder/`): what every HTTP front of the product needs and neither service owns. Transport
only: it may import `dc`, never the other way round, and neither service imports the other.
"""
