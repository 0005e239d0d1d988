from django.urls import path

from exampleapp import views

urlpatterns = [
    path("", views.index, name="index"),
    path("health", views.health, name="health"),
]
